"""The replica daemon: state machine, ordering, checkpoints and catch-up."""
