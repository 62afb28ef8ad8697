"""The process supervisor: starts backends, the control plane and Envoy as one stack.

Kept apart from the control plane, which it runs as a child process like any other.
"""
