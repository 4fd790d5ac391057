"""Collaborator "middle" of the three-party vertical MNIST task: columns 10-18 of every image."""

from strips import StripCollaborator

scheduler = StripCollaborator("middle")
scheduler.launch_task(task_id="vertical3-mnist")
