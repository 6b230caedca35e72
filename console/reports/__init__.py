"""Situational and incident reports, HTML and PDF, zh-CN and English (``liaowang report``, the console)."""

from console.reports.pdf import to_pdf
from console.reports.render import PERIODS, Report, ReportError, incident_report, situation_report

__all__ = ["PERIODS", "Report", "ReportError", "incident_report", "situation_report", "to_pdf"]
