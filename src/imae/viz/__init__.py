"""Figures and the HTML/Markdown report."""
