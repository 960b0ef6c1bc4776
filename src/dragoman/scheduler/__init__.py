"""The scheduler: ``dragoman serve`` — its sockets, sessions, nodes, rooms, store and views.

It imports the shared modules (``dragoman.protocol``, ``audio``, ``pcm``, ``opus``, ``langs``, ``config``,
``logs``, ``errors``) and never the node agent or the client tools, which never import it.
"""
