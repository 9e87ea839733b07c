"""The student: how it is initialised (models), how it answers (generate) and how it learns (train)."""
