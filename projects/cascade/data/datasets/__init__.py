from .trees import register_trees

__all__ = ["register_trees"]
