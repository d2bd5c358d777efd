"""Share links: time-limited, revocable links that open a few studies without an account."""
