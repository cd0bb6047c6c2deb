"""Defaults that several flows and commands share, each named once (a default of one flow stays
in that flow's signature)."""

# relative to the project folder, where `mvp` and the Prefect deployments run
WAREHOUSE = "runs/demo/warehouse"
