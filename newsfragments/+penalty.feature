A listening port refuses, for ``evictionPenalty`` seconds (1 by default), new connections from a process whose connection was just closed for holding more descriptors than its share.
