"""Durable jobs: sending studies to remote AEs (C-STORE) and pulling them (C-MOVE).

Jobs live in the index (table ``jobs``), run step by step in the HTTP (main)
process, and serialize their progress so that they survive restarts.
"""
