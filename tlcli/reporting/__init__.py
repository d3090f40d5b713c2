"""What a run writes for people to read: files, per-class tables, HTML, the sweep leaderboard."""
