"""``seg-bench``: how fast the networks, the inference path, the node and the trainer are, measured here.

One module per section: ``forward``, ``segment``, ``messages``, ``node`` (and ``overload``),
``training``, ``ground``; ``targets`` holds the project's targets and ``papers`` the papers'
figures they are compared with; ``common`` the timing helpers; ``cli`` the command.
``segfast_reference`` times the SegFast authors' code beside ours.
"""
