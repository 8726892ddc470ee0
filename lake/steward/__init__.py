"""The steward's lifecycle of a lake: erasure (``lake forget``), quarantine review, maintenance."""

from lake.steward._forget import ErasurePlan, ErasureReport, Target, forget, plan_forget, target

__all__ = ["ErasurePlan", "ErasureReport", "Target", "forget", "plan_forget", "target"]
