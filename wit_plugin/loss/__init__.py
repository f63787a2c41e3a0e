"""Weighted token losses: from materialised logits (eager) or from hidden states in chunks."""
