"""ssh_config as OpenSSH reads it: where ``ssh NAME`` connects, as whom, with which keys, through which hops.

A model of OpenSSH's readconf.c (9.x) for the options keybuzz-fix uses, proven against the real
``ssh -G`` by tests/property/test_ssh_config_model.py. As ``ssh`` does:

- the files are the user's ``~/.ssh/config`` then ``/etc/ssh/ssh_config``, or only the one given
  with ``--ssh-config`` (``ssh -F``; ``none`` reads none);
- a ``Host`` line (``*``/``?`` patterns, ``!`` negations, matched on the name as typed) or a
  ``Match`` line (``host``, ``originalhost``, ``user``, ``localuser``, ``exec``, ``all``,
  ``canonical``, ``final``) opens a block that applies when it matches; ``Include`` reads files in
  place (relative paths under ``~/.ssh``, or ``/etc/ssh`` from the system file; globs sorted);
- for each option the first value obtained wins (IdentityFile accumulates); ``Match final`` or
  CanonicalizeHostname asks for a second pass with the resolved HostName;
- HostName expands ``%h``; UserKnownHostsFile and IdentityFile expand ``~``, ``${VAR}`` and
  ``%C %d %h %i %k %L %l %n %p %r %u``; ProxyCommand ``%h %k %n %p %r``.

Options keybuzz-fix does not use are read (quotes checked) and otherwise ignored, unknown keywords
too (a newer OpenSSH's options must not stop the tool). Not modelled: DNS canonicalisation with
CanonicalDomains (the name is kept, as with CanonicalizeFallbackLocal yes).

The modules, after OpenSSH's own files: :mod:`.misc` (the string and pattern helpers of misc.c and
match.c), :mod:`.tokens` (``%`` tokens, ``~`` and ``${VAR}``), :mod:`.hops` (what the files say
about a name, and the hops it resolves to), :mod:`.jump` (ProxyJump values), :mod:`.readconf` (the
lines: Host, Match, Include and the options) and :mod:`.config` (the files of a run, and the route
to a host through its ProxyJump chain).
"""
