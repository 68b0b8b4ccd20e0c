"""``python -m srvau.cli ...`` (what ``accelerate launch -m srvau.cli`` runs on every rank)."""

from srvau.cli.app import app

if __name__ == "__main__":
    app(prog_name="srvau")
