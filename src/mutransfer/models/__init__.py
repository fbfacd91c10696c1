"""Reference models: factories taking shape keywords that plug straight into ``mutransfer.plan``."""

from mutransfer.models.cnn import ResNet
from mutransfer.models.gpt import GPT
from mutransfer.models.llama import Llama
from mutransfer.models.mlp import MLP

__all__ = ["GPT", "MLP", "Llama", "ResNet"]
