"""A free TCP port for the tests that start `accelerate launch`: its default, 29500, is shared by every launch, and two
test workers launching at once could both see it free and then collide."""

import socket


def free_port() -> int:
    """A port the OS just handed out and released: its ephemeral ports come in random order, so another process
    taking the same one before the launch binds it is far less likely than a collision on a fixed port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
