"""Collaborator B of the breast-cancer task: the ten "worst" columns."""

from breast_cancer_collaborator import BreastCancerCollaborator

scheduler = BreastCancerCollaborator("collaborator-b")
scheduler.launch_task(task_id="breast-cancer")
