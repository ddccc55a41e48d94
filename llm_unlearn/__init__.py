"""llm_unlearn: machine unlearning for LLMs on the Hugging Face stack."""

__version__ = "0.1.0"
