"""What the runs say: the report (figure 5, the paper's claims, scaling) and the comparison of campaigns."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "report": ("build_report", "ReportData"),
    "claims": ("CLAIMS", "check_claims"),
})
