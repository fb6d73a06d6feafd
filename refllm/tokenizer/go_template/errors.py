"""The one error the go_template package raises to its callers, from any stage: a module of its own
so that the executor and the public class (which imports the executor) can both raise it."""

from refllm.errors import RefllmError


class GoTemplateError(RefllmError):
    """A Go template that does not parse, fails to execute, or uses what refllm does not support."""
