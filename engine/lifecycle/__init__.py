"""The lifecycle module: subscriber states, notifications, offers and campaigns."""
