//! Stage four's input and output: the facts about one request, and the
//! [`Decision`] with a reason and a remedy the user can act on.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Serialize, Serializer};

use crate::ast::Effect;

/// Everything policy may look at for one request. Plain borrowed data: the proxy
/// builds it per request without allocating.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The route the request was routed to (`ehr`, `imaging`, ...).
    pub route: &'a str,
    /// The HTTP method (compared case-insensitively).
    pub method: &'a str,
    /// The canonical path (decoded and normalised once by the proxy), without query.
    pub path: &'a str,
    /// The client address policy sees (IPv4-mapped IPv6 counts as IPv4).
    pub source: IpAddr,
    /// The authenticated subject; `None` when there is no identity.
    pub user: Option<&'a str>,
    /// The user's groups.
    pub groups: &'a [String],
    /// The identity's other claims (ID token or bearer token), JSON values.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// How long ago the user last passed MFA; `None`: no MFA in this session.
    pub mfa_age: Option<Duration>,
    /// When the request is decided.
    pub time: Timestamp,
    /// Posture of the device the request comes from; `None`: unknown device.
    pub device: Option<DeviceFacts<'a>>,
    /// The visit room of a patient session.
    pub visit_room: Option<&'a str>,
    /// True when the user stated a break-the-glass justification (an open elevation).
    pub break_glass: bool,
}

/// The posture of a known device.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceFacts<'a> {
    /// Enrolled in the practice's MDM.
    pub managed: bool,
    /// Disk encryption on.
    pub disk_encrypted: bool,
    /// Screen lock on.
    pub screen_lock: bool,
    /// Platform: `macos`, `windows`, `ios`, `android` (compared case-insensitively).
    pub os: Option<&'a str>,
    /// Dotted OS version such as `14.4.1`.
    pub os_version: Option<&'a str>,
    /// Time since the device last checked in with the MDM.
    pub checkin_age: Option<Duration>,
}

/// The conditions of a rule, in the fixed order in which they are checked and
/// in which `explain` reports the first one that did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// `routes`
    Route,
    /// `methods`
    Method,
    /// `paths`
    Path,
    /// `visit_room = "own"`
    VisitRoom,
    /// `sources`
    Source,
    /// `groups`
    Groups,
    /// `claims`
    Claims,
    /// `mfa_max_age`
    Mfa,
    /// `device`
    Device,
    /// `hours`
    Hours,
    /// `break_glass = true`
    BreakGlass,
}

impl Condition {
    /// All conditions in check order.
    pub const ALL: [Condition; 11] = [
        Condition::Route,
        Condition::Method,
        Condition::Path,
        Condition::VisitRoom,
        Condition::Source,
        Condition::Groups,
        Condition::Claims,
        Condition::Mfa,
        Condition::Device,
        Condition::Hours,
        Condition::BreakGlass,
    ];

    /// The policy key of the condition.
    pub fn key(self) -> &'static str {
        match self {
            Condition::Route => "routes",
            Condition::Method => "methods",
            Condition::Path => "paths",
            Condition::VisitRoom => "visit_room",
            Condition::Source => "sources",
            Condition::Groups => "groups",
            Condition::Claims => "claims",
            Condition::Mfa => "mfa_max_age",
            Condition::Device => "device",
            Condition::Hours => "hours",
            Condition::BreakGlass => "break_glass",
        }
    }

    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.key())
    }
}

/// Which device requirement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceFailure {
    /// No verified device identity (no client certificate, or no fresh posture facts).
    Unknown,
    /// Not enrolled in the practice's device management.
    NotManaged,
    /// Disk encryption off.
    DiskNotEncrypted,
    /// No screen lock.
    NoScreenLock,
    /// The device has not checked in recently enough (or never).
    CheckinStale,
    /// The device's platform is not one the rule lists in `os_min`.
    OsNotAllowed,
    /// The operating system is older than the rule's minimum (or unreported).
    OsOutdated,
}

/// Why a request was denied: each variant has a remedy the user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No (valid) identity: log in again.
    LoginRequired,
    /// MFA missing or too old: step up.
    MfaRequired,
    /// The device does not meet a posture requirement.
    Device(DeviceFailure),
    /// Outside the rule's hours.
    OutsideHours,
    /// The source network is not allowed.
    NetworkNotAllowed,
    /// A break-the-glass rule would allow the request once a justification is stated.
    BreakGlassRequired,
    /// Nothing the user can change: not permitted (or stopped by a deny rule).
    NotPermitted,
}

impl DenyReason {
    /// Every reason (for metrics labels and documentation).
    pub const ALL: [DenyReason; 13] = [
        DenyReason::LoginRequired,
        DenyReason::MfaRequired,
        DenyReason::Device(DeviceFailure::Unknown),
        DenyReason::Device(DeviceFailure::NotManaged),
        DenyReason::Device(DeviceFailure::DiskNotEncrypted),
        DenyReason::Device(DeviceFailure::NoScreenLock),
        DenyReason::Device(DeviceFailure::CheckinStale),
        DenyReason::Device(DeviceFailure::OsNotAllowed),
        DenyReason::Device(DeviceFailure::OsOutdated),
        DenyReason::OutsideHours,
        DenyReason::NetworkNotAllowed,
        DenyReason::BreakGlassRequired,
        DenyReason::NotPermitted,
    ];

    /// A stable machine-readable code (audit records, JSON error bodies).
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::LoginRequired => "login_required",
            DenyReason::MfaRequired => "mfa_required",
            DenyReason::Device(d) => match d {
                DeviceFailure::Unknown => "device_unknown",
                DeviceFailure::NotManaged => "device_not_managed",
                DeviceFailure::DiskNotEncrypted => "device_disk_not_encrypted",
                DeviceFailure::NoScreenLock => "device_no_screen_lock",
                DeviceFailure::CheckinStale => "device_checkin_stale",
                DeviceFailure::OsNotAllowed => "device_os_not_allowed",
                DeviceFailure::OsOutdated => "device_os_outdated",
            },
            DenyReason::OutsideHours => "outside_hours",
            DenyReason::NetworkNotAllowed => "network_not_allowed",
            DenyReason::BreakGlassRequired => "break_glass_required",
            DenyReason::NotPermitted => "not_permitted",
        }
    }

    /// What the user can do about it, one sentence for the deny page.
    pub fn remedy(self) -> &'static str {
        match self {
            DenyReason::LoginRequired => "Log in again.",
            DenyReason::MfaRequired => {
                "Confirm it is you with your second factor (step-up MFA), then try again."
            }
            DenyReason::Device(d) => match d {
                DeviceFailure::Unknown => {
                    "Use a practice-managed device with its device certificate installed."
                }
                DeviceFailure::NotManaged => {
                    "Use a device enrolled in the practice's device management."
                }
                DeviceFailure::DiskNotEncrypted => {
                    "Turn on disk encryption on this device (FileVault, BitLocker), or use a compliant device."
                }
                DeviceFailure::NoScreenLock => "Turn on the screen lock on this device.",
                DeviceFailure::CheckinStale => {
                    "Let this device check in with device management (connect it and wait a few minutes), then try again."
                }
                DeviceFailure::OsNotAllowed => {
                    "This kind of device is not allowed here; use a supported practice device."
                }
                DeviceFailure::OsOutdated => {
                    "Update this device's operating system, then try again."
                }
            },
            DenyReason::OutsideHours => "Access is allowed only during set hours; try again then.",
            DenyReason::NetworkNotAllowed => {
                "Connect from an allowed network (such as the clinic network or its VPN)."
            }
            DenyReason::BreakGlassRequired => {
                "For emergency access, state a justification on the break-the-glass page; its use is recorded and reviewed."
            }
            DenyReason::NotPermitted => {
                "You are not permitted to access this. Ask your administrator if you need it."
            }
        }
    }

    /// A short human description (the deny page's heading).
    pub fn message(self) -> &'static str {
        match self {
            DenyReason::LoginRequired => "you need to log in",
            DenyReason::MfaRequired => "a recent second-factor check (MFA) is required",
            DenyReason::Device(d) => match d {
                DeviceFailure::Unknown => "this device is not recognised",
                DeviceFailure::NotManaged => "this device is not managed by the practice",
                DeviceFailure::DiskNotEncrypted => "this device's disk is not encrypted",
                DeviceFailure::NoScreenLock => "this device has no screen lock",
                DeviceFailure::CheckinStale => {
                    "this device has not checked in with device management recently"
                }
                DeviceFailure::OsNotAllowed => "this device's operating system is not allowed",
                DeviceFailure::OsOutdated => "this device's operating system is out of date",
            },
            DenyReason::OutsideHours => "outside the allowed hours",
            DenyReason::NetworkNotAllowed => "not allowed from this network",
            DenyReason::BreakGlassRequired => "break-the-glass justification needed",
            DenyReason::NotPermitted => "not permitted",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.message())
    }
}

impl Serialize for DenyReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// The answer for one request. Borrows rule names from the compiled policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    /// Let it through.
    Allow {
        /// The deciding rule (the first matching allow rule in file order).
        rule: &'p str,
        /// The rule is a break-the-glass rule: audit the use and raise an alert.
        break_glass: bool,
    },
    /// Stop it.
    Deny {
        /// The deciding deny rule; `None`: no allow rule matched (default deny).
        rule: Option<&'p str>,
        /// Why, with a remedy.
        reason: DenyReason,
        /// A break-the-glass rule would allow this request once the user states
        /// a justification: offer the break-the-glass page. Never set when a
        /// deny rule decided (deny overrides every allow, break-the-glass too).
        break_glass: bool,
    },
}

impl<'p> Decision<'p> {
    /// Allow or deny.
    pub fn effect(&self) -> Effect {
        match self {
            Decision::Allow { .. } => Effect::Allow,
            Decision::Deny { .. } => Effect::Deny,
        }
    }

    /// True for [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The deciding rule's name, or `"default"` for the default deny.
    pub fn rule(&self) -> &'p str {
        match self {
            Decision::Allow { rule, .. } => rule,
            Decision::Deny { rule, .. } => rule.unwrap_or(crate::parse::DEFAULT_RULE),
        }
    }

    /// The reason, when denied.
    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { reason, .. } => Some(*reason),
        }
    }

    /// True when denied and a break-the-glass rule would allow the request once
    /// a justification is stated.
    pub fn break_glass_available(&self) -> bool {
        matches!(
            self,
            Decision::Deny {
                break_glass: true,
                ..
            }
        )
    }

    /// The remedy text, when denied.
    pub fn remedy(&self) -> Option<&'static str> {
        self.reason().map(DenyReason::remedy)
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { rule, break_glass } => {
                write!(f, "allow (rule `{rule}`")?;
                if *break_glass {
                    f.write_str(", break-the-glass")?;
                }
                f.write_str(")")
            }
            Decision::Deny {
                rule,
                reason,
                break_glass,
            } => {
                write!(
                    f,
                    "deny (rule `{}`): {reason}. {}",
                    rule.unwrap_or(crate::parse::DEFAULT_RULE),
                    reason.remedy()
                )?;
                if *break_glass {
                    f.write_str(" Break-the-glass access is available.")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_code_message_and_remedy() {
        let mut codes: Vec<&str> = DenyReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DenyReason::ALL.len());
        for r in DenyReason::ALL {
            // A new variant must be added to ALL: this match fails to compile otherwise.
            match r {
                DenyReason::LoginRequired
                | DenyReason::MfaRequired
                | DenyReason::Device(_)
                | DenyReason::OutsideHours
                | DenyReason::NetworkNotAllowed
                | DenyReason::BreakGlassRequired
                | DenyReason::NotPermitted => {}
            }
            assert!(r.remedy().ends_with('.'));
            assert!(!r.message().is_empty());
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
        }
    }
}
