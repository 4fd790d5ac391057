"""Collaborator A of the breast-cancer task: fifteen columns (five "mean", ten "error")."""

from breast_cancer_collaborator import BreastCancerCollaborator

scheduler = BreastCancerCollaborator("collaborator-a")
scheduler.launch_task(task_id="breast-cancer")
