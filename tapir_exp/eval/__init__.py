"""Evaluation every round: AlpacaEval-2-style pairwise win rates and MT-Bench-style graded answers."""
