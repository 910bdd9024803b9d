"""Real Envoy as localmesh's second data plane: its binary, its bootstrap and its file-based xDS."""
