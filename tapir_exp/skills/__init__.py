"""The skills world: procedurally generated tasks with exactly checkable answers, an oracle that plays every
role for them, a character-level student and exact-match evaluation (see docs/skills_world.md)."""
