"""ErGo: train a seq2seq chatbot on your own dialogs and talk to it in the browser."""

__version__ = "0.1.0"
