"""Drop-in storage modules for the programs that use plainbox's storage today.

``sessionstore.compat.plainbox`` stands in for ``plainbox.impl.session.storage``
of plainbox 0.38, ``sessionstore.compat.checkbox`` for the same module of today's
Checkbox (``checkbox-ng``). Each is a thin layer over this library's storage:
the same save sequence, the same backends, the same guarantees.
"""
