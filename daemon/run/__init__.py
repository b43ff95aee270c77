"""The run itself: one commit from snapshot to record (pipeline), its plan graph and checkpoints, reports."""
