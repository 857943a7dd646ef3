"""Command-line entry points: `kvdisco` (server) and, later, `kvctl` (client)."""
