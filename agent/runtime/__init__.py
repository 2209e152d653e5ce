"""The daemon: supervised tasks, the collection tick, signals, logging and systemd notify."""
