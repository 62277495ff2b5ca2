"""Prompts simulated from ground-truth masks (points, boxes, correction clicks), shared by training and evaluation."""
