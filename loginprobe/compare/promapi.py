"""The Prometheus HTTP API, as much of it as compare reads."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request


class CompareError(Exception):
    """A usage or Prometheus problem: one sentence on stderr, exit status 2."""


class Prometheus:
    """Instant queries against Prometheus's HTTP API, with errors worded for a user."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CompareError(f"--prometheus {url!r}: expected http://HOST:PORT or https://…")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """The vector expr gives at time `at`, as (labels, value) pairs."""
        body = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}).encode()
        # POST form: long queries would not fit a URL. The scheme was checked in __init__.
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=body)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise CompareError(self._refusal(exc, expr)) from None
        except urllib.error.URLError as exc:
            raise CompareError(f"cannot reach Prometheus at {self.url}: {exc.reason}") from None
        except TimeoutError:
            raise CompareError(
                f"Prometheus at {self.url} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, ValueError) as exc:
            raise CompareError(f"bad answer from Prometheus at {self.url}: {exc}") from None
        data = answer.get("data", {}) if isinstance(answer, dict) else {}
        if answer.get("status") != "success" or data.get("resultType") != "vector":
            raise CompareError(f"unexpected answer from Prometheus at {self.url} to {expr}")
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def _refusal(self, exc: urllib.error.HTTPError, expr: str) -> str:
        try:
            error = json.load(exc)["error"]
        except (ValueError, KeyError, TypeError, OSError):
            return (
                f"Prometheus at {self.url} answered HTTP {exc.code} {exc.reason}: "
                "is this the base URL of a Prometheus server?"
            )
        return f"Prometheus refused the query {expr}: {error}"
