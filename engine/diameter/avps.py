"""The Diameter dictionary Tollgate knows: AVP codes and types, command codes, result codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum

VENDOR_3GPP = 10415
CREDIT_CONTROL_APP = 4
"""Auth-Application-Id of Diameter Credit Control (RFC 4006)."""
RELAY_APP = 0xFFFFFFFF
NTP_TO_UNIX_S = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970): Diameter Time is NTP."""


class AvpType(Enum):
    OCTETS = "OctetString"
    UTF8 = "UTF8String"
    IDENTITY = "DiamIdent"
    ADDRESS = "Address"
    UNSIGNED32 = "Unsigned32"
    UNSIGNED64 = "Unsigned64"
    INTEGER32 = "Integer32"
    INTEGER64 = "Integer64"
    ENUMERATED = "Enumerated"
    TIME = "Time"
    GROUPED = "Grouped"
    OPAQUE_GROUPED = "Grouped (not read)"
    """A grouped AVP whose contents Tollgate does not use (Service-Information, Failed-AVP):
    kept as bytes and not checked, so AVPs inside it that Tollgate does not know pass."""


@dataclass(frozen=True, slots=True)
class AvpDef:
    code: int
    name: str
    type: AvpType
    vendor: int = 0
    mandatory: bool = True
    """Whether Tollgate sets the M flag when it sends this AVP."""
    flags: int = field(init=False, compare=False)
    """The flags Tollgate sends it with (V for a vendor's, M where mandatory)."""

    def __post_init__(self) -> None:
        # Set once here: every AVP built is flagged by it.
        object.__setattr__(self, "flags", (0x80 if self.vendor else 0)
                           | (0x40 if self.mandatory else 0))


def _d(code: int, name: str, kind: AvpType, vendor: int = 0, mandatory: bool = True) -> AvpDef:
    return AvpDef(code, name, kind, vendor, mandatory)


T = AvpType
# RFC 6733 (base)
USER_NAME = _d(1, "User-Name", T.UTF8)
FILTER_ID = _d(11, "Filter-Id", T.UTF8)
CLASS = _d(25, "Class", T.OCTETS)
CALLED_STATION_ID = _d(30, "Called-Station-Id", T.UTF8)
PROXY_STATE = _d(33, "Proxy-State", T.OCTETS)
EVENT_TIMESTAMP = _d(55, "Event-Timestamp", T.TIME)
HOST_IP_ADDRESS = _d(257, "Host-IP-Address", T.ADDRESS)
AUTH_APPLICATION_ID = _d(258, "Auth-Application-Id", T.UNSIGNED32)
ACCT_APPLICATION_ID = _d(259, "Acct-Application-Id", T.UNSIGNED32)
VENDOR_SPECIFIC_APPLICATION_ID = _d(260, "Vendor-Specific-Application-Id", T.GROUPED)
REDIRECT_HOST_USAGE = _d(261, "Redirect-Host-Usage", T.ENUMERATED)
REDIRECT_MAX_CACHE_TIME = _d(262, "Redirect-Max-Cache-Time", T.UNSIGNED32)
SESSION_ID = _d(263, "Session-Id", T.UTF8)
ORIGIN_HOST = _d(264, "Origin-Host", T.IDENTITY)
SUPPORTED_VENDOR_ID = _d(265, "Supported-Vendor-Id", T.UNSIGNED32)
VENDOR_ID = _d(266, "Vendor-Id", T.UNSIGNED32)
FIRMWARE_REVISION = _d(267, "Firmware-Revision", T.UNSIGNED32, mandatory=False)
RESULT_CODE = _d(268, "Result-Code", T.UNSIGNED32)
PRODUCT_NAME = _d(269, "Product-Name", T.UTF8, mandatory=False)
SESSION_BINDING = _d(270, "Session-Binding", T.UNSIGNED32)
SESSION_SERVER_FAILOVER = _d(271, "Session-Server-Failover", T.ENUMERATED)
DISCONNECT_CAUSE = _d(273, "Disconnect-Cause", T.ENUMERATED)
AUTH_REQUEST_TYPE = _d(274, "Auth-Request-Type", T.ENUMERATED)
AUTH_GRACE_PERIOD = _d(276, "Auth-Grace-Period", T.UNSIGNED32)
AUTH_SESSION_STATE = _d(277, "Auth-Session-State", T.ENUMERATED)
ORIGIN_STATE_ID = _d(278, "Origin-State-Id", T.UNSIGNED32)
FAILED_AVP = _d(279, "Failed-AVP", T.OPAQUE_GROUPED)
PROXY_HOST = _d(280, "Proxy-Host", T.IDENTITY)
ERROR_MESSAGE = _d(281, "Error-Message", T.UTF8, mandatory=False)
ROUTE_RECORD = _d(282, "Route-Record", T.IDENTITY)
DESTINATION_REALM = _d(283, "Destination-Realm", T.IDENTITY)
PROXY_INFO = _d(284, "Proxy-Info", T.GROUPED)
RE_AUTH_REQUEST_TYPE = _d(285, "Re-Auth-Request-Type", T.ENUMERATED)
ACCOUNTING_SUB_SESSION_ID = _d(287, "Accounting-Sub-Session-Id", T.UNSIGNED64)
AUTHORIZATION_LIFETIME = _d(291, "Authorization-Lifetime", T.UNSIGNED32)
REDIRECT_HOST = _d(292, "Redirect-Host", T.OCTETS)
DESTINATION_HOST = _d(293, "Destination-Host", T.IDENTITY)
ERROR_REPORTING_HOST = _d(294, "Error-Reporting-Host", T.IDENTITY, mandatory=False)
TERMINATION_CAUSE = _d(295, "Termination-Cause", T.ENUMERATED)
ORIGIN_REALM = _d(296, "Origin-Realm", T.IDENTITY)
EXPERIMENTAL_RESULT = _d(297, "Experimental-Result", T.GROUPED)
EXPERIMENTAL_RESULT_CODE = _d(298, "Experimental-Result-Code", T.UNSIGNED32)
INBAND_SECURITY_ID = _d(299, "Inband-Security-Id", T.UNSIGNED32)
# RFC 4006 (credit control)
CC_CORRELATION_ID = _d(411, "CC-Correlation-Id", T.OCTETS, mandatory=False)
CC_INPUT_OCTETS = _d(412, "CC-Input-Octets", T.UNSIGNED64)
CC_MONEY = _d(413, "CC-Money", T.OPAQUE_GROUPED)
CC_OUTPUT_OCTETS = _d(414, "CC-Output-Octets", T.UNSIGNED64)
CC_REQUEST_NUMBER = _d(415, "CC-Request-Number", T.UNSIGNED32)
CC_REQUEST_TYPE = _d(416, "CC-Request-Type", T.ENUMERATED)
CC_SERVICE_SPECIFIC_UNITS = _d(417, "CC-Service-Specific-Units", T.UNSIGNED64)
CC_SESSION_FAILOVER = _d(418, "CC-Session-Failover", T.ENUMERATED)
CC_SUB_SESSION_ID = _d(419, "CC-Sub-Session-Id", T.UNSIGNED64)
CC_TIME = _d(420, "CC-Time", T.UNSIGNED32)
CC_TOTAL_OCTETS = _d(421, "CC-Total-Octets", T.UNSIGNED64)
COST_INFORMATION = _d(423, "Cost-Information", T.OPAQUE_GROUPED)
CREDIT_CONTROL_FAILURE_HANDLING = _d(427, "Credit-Control-Failure-Handling", T.ENUMERATED)
DIRECT_DEBITING_FAILURE_HANDLING = _d(428, "Direct-Debiting-Failure-Handling", T.ENUMERATED)
FINAL_UNIT_INDICATION = _d(430, "Final-Unit-Indication", T.GROUPED)
GRANTED_SERVICE_UNIT = _d(431, "Granted-Service-Unit", T.GROUPED)
RATING_GROUP = _d(432, "Rating-Group", T.UNSIGNED32)
REDIRECT_ADDRESS_TYPE = _d(433, "Redirect-Address-Type", T.ENUMERATED)
REDIRECT_SERVER = _d(434, "Redirect-Server", T.GROUPED)
REDIRECT_SERVER_ADDRESS = _d(435, "Redirect-Server-Address", T.UTF8)
REQUESTED_ACTION = _d(436, "Requested-Action", T.ENUMERATED)
REQUESTED_SERVICE_UNIT = _d(437, "Requested-Service-Unit", T.GROUPED)
RESTRICTION_FILTER_RULE = _d(438, "Restriction-Filter-Rule", T.OCTETS)
SERVICE_IDENTIFIER = _d(439, "Service-Identifier", T.UNSIGNED32)
SERVICE_PARAMETER_INFO = _d(440, "Service-Parameter-Info", T.OPAQUE_GROUPED, mandatory=False)
SUBSCRIPTION_ID_DATA = _d(444, "Subscription-Id-Data", T.UTF8)
SUBSCRIPTION_ID = _d(443, "Subscription-Id", T.GROUPED)
UNIT_VALUE = _d(445, "Unit-Value", T.OPAQUE_GROUPED)
USED_SERVICE_UNIT = _d(446, "Used-Service-Unit", T.GROUPED)
VALIDITY_TIME = _d(448, "Validity-Time", T.UNSIGNED32)
FINAL_UNIT_ACTION = _d(449, "Final-Unit-Action", T.ENUMERATED)
SUBSCRIPTION_ID_TYPE = _d(450, "Subscription-Id-Type", T.ENUMERATED)
TARIFF_TIME_CHANGE = _d(451, "Tariff-Time-Change", T.TIME)
TARIFF_CHANGE_USAGE = _d(452, "Tariff-Change-Usage", T.ENUMERATED)
MULTIPLE_SERVICES_INDICATOR = _d(455, "Multiple-Services-Indicator", T.ENUMERATED)
MULTIPLE_SERVICES_CREDIT_CONTROL = _d(456, "Multiple-Services-Credit-Control", T.GROUPED)
USER_EQUIPMENT_INFO = _d(458, "User-Equipment-Info", T.OPAQUE_GROUPED, mandatory=False)
SERVICE_CONTEXT_ID = _d(461, "Service-Context-Id", T.UTF8)
# 3GPP TS 29.061 / TS 32.299 (vendor 10415)
TGPP_SGSN_MCC_MNC = _d(18, "3GPP-SGSN-MCC-MNC", T.UTF8, VENDOR_3GPP, mandatory=False)
TIME_QUOTA_THRESHOLD = _d(868, "Time-Quota-Threshold", T.UNSIGNED32, VENDOR_3GPP)
VOLUME_QUOTA_THRESHOLD = _d(869, "Volume-Quota-Threshold", T.UNSIGNED32, VENDOR_3GPP)
QUOTA_HOLDING_TIME = _d(871, "Quota-Holding-Time", T.UNSIGNED32, VENDOR_3GPP)
REPORTING_REASON = _d(872, "Reporting-Reason", T.ENUMERATED, VENDOR_3GPP)
SERVICE_INFORMATION = _d(873, "Service-Information", T.OPAQUE_GROUPED, VENDOR_3GPP)
PS_INFORMATION = _d(874, "PS-Information", T.OPAQUE_GROUPED, VENDOR_3GPP)
TRIGGER = _d(1264, "Trigger", T.OPAQUE_GROUPED, VENDOR_3GPP)
TGPP_USER_LOCATION_INFO = _d(22, "3GPP-User-Location-Info", T.OCTETS, VENDOR_3GPP, False)
TGPP_MS_TIMEZONE = _d(23, "3GPP-MS-TimeZone", T.OCTETS, VENDOR_3GPP, mandatory=False)
TGPP_RAT_TYPE = _d(21, "3GPP-RAT-Type", T.OCTETS, VENDOR_3GPP, mandatory=False)

DICTIONARY: dict[tuple[int, int], AvpDef] = {
    (d.code, d.vendor): d for d in globals().values() if isinstance(d, AvpDef)}
"""(code, vendor) -> definition, for every AVP above."""


class Command(IntEnum):
    CAPABILITIES_EXCHANGE = 257
    RE_AUTH = 258
    CREDIT_CONTROL = 272
    ABORT_SESSION = 274
    SESSION_TERMINATION = 275
    DEVICE_WATCHDOG = 280
    DISCONNECT_PEER = 282


class Result(IntEnum):
    """Result-Code values of RFC 6733 / RFC 4006 that the Diameter front itself answers (the
    engine's own codes are engine.domain.ResultCode, the same numbers)."""

    SUCCESS = 2001
    LIMITED_SUCCESS = 2002
    COMMAND_UNSUPPORTED = 3001
    UNABLE_TO_DELIVER = 3002
    REALM_NOT_SERVED = 3003
    TOO_BUSY = 3004
    APPLICATION_UNSUPPORTED = 3007
    INVALID_HDR_BITS = 3008
    INVALID_AVP_BITS = 3009
    UNKNOWN_PEER = 3010
    AVP_UNSUPPORTED = 5001
    UNKNOWN_SESSION_ID = 5002
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    NO_COMMON_APPLICATION = 5010
    UNSUPPORTED_VERSION = 5011
    UNABLE_TO_COMPLY = 5012
    INVALID_AVP_LENGTH = 5014
    INVALID_MESSAGE_LENGTH = 5015
    USER_UNKNOWN = 5030

    @property
    def is_protocol_error(self) -> bool:
        """3xxx: answered with the E bit set (RFC 6733 §7.1.3)."""
        return 3000 <= self.value < 4000


class CcRequestType(IntEnum):
    INITIAL = 1
    UPDATE = 2
    TERMINATION = 3
    EVENT = 4


class SubscriptionIdType(IntEnum):
    E164 = 0
    IMSI = 1
    SIP_URI = 2
    NAI = 3
    PRIVATE = 4


class RequestedAction(IntEnum):
    DIRECT_DEBITING = 0
    REFUND_ACCOUNT = 1
    CHECK_BALANCE = 2
    PRICE_ENQUIRY = 3


class FinalUnitAction(IntEnum):
    TERMINATE = 0
    REDIRECT = 1
    RESTRICT_ACCESS = 2


class RedirectAddressType(IntEnum):
    IPV4 = 0
    IPV6 = 1
    URL = 2
    SIP_URI = 3


class DisconnectCause(IntEnum):
    REBOOTING = 0
    BUSY = 1
    DO_NOT_WANT_TO_TALK_TO_YOU = 2
