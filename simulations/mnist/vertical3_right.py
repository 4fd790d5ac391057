"""Collaborator "right" of the three-party vertical MNIST task: columns 19-27 of every image."""

from strips import StripCollaborator

scheduler = StripCollaborator("right")
scheduler.launch_task(task_id="vertical3-mnist")
