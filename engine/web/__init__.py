"""The web pages: operator dashboard, customer care's subscriber view, self-service links."""
