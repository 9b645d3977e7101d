"""Real servers (unbound, prosody, mosquitto, nginx) and network faults for the tests."""
