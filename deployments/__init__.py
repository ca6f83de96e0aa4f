"""How the flows run: ``prefect.yaml`` (schedules, S3-event triggers), ``python -m
deployments.serve``, and the S3-events bridge ``python -m prefect_ig1.deployments.s3_events``.

Nothing is imported here, so ``python -m deployments.<module>`` runs each module once.
"""
