"""Small stand-ins shared by the HTTP tests."""


class Lines:
    """An audit sink that keeps its lines."""

    def __init__(self):
        self.lines: list[dict] = []

    def write(self, event, **fields):
        self.lines.append({"event": event, **fields})


class CountingAuth:
    """An authenticator whose token changes on every re-authentication."""

    fix_hint = "run: mlconnector auth login books"

    def __init__(self):
        self.token, self.refreshes = "tok-1", 0

    def apply(self, headers, http):
        headers["Authorization"] = f"Bearer {self.token}"

    def reauthenticate(self, http):
        self.refreshes += 1
        self.token = f"tok-{self.refreshes + 1}"
