"""Layer-wise relevance propagation: linear units, rules as declarations, presets as data."""
