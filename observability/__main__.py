"""`python -m observability timeline ORDER_ID` / `python -m observability asyncapi`."""

from observability.cli import app

if __name__ == "__main__":
    app()
