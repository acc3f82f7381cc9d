"""The exceptions Tollgate raises, in one tree.

TollgateError
├── ConfigError          bad configuration; the process cannot start
├── InvalidArgument      a request that cannot be accepted (-> gRPC INVALID_ARGUMENT)
├── NotFound             a plan, account or subscriber that does not exist (-> NOT_FOUND)
├── AlreadyExists        create of something that exists (-> ALREADY_EXISTS)
├── Conflict             refused in the current state: a subscriber of another account,
│                        a member with live reservations, not enough money (-> FAILED_PRECONDITION)
└── Overloaded           the batch queue is full (-> RESOURCE_EXHAUSTED)

Connection problems with Redis surface as redis.exceptions.ConnectionError and
TimeoutError: retryable, never a business answer.
"""


class TollgateError(Exception):
    pass


class ConfigError(TollgateError):
    pass


class InvalidArgument(TollgateError):
    pass


class NotFound(TollgateError):
    pass


class AlreadyExists(TollgateError):
    pass


class Conflict(TollgateError):
    pass


class Overloaded(TollgateError):
    pass
