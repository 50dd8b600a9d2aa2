//! Every step a move journals, by name. The journal writes these names, recovery asks the
//! journal for them, `NETMIGRATE_CRASH_AT` and the crash-matrix tests name them: all through
//! this type, so a renamed step is renamed everywhere.

use std::borrow::Cow;

macro_rules! steps {
    ($($(#[$doc:meta])* $v:ident => $name:literal,)*) => {
        /// One journaled step of a move, its rollback, its recovery or its after-move hooks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Step {
            $($(#[$doc])* $v,)*
            /// An after-move hook (`after move: NAME`): a service's, or the operator's script.
            AfterMove(&'static str),
        }

        impl Step {
            /// Every step but the after-move hooks, whose names come from the hooks.
            pub const FIXED: &'static [Step] = &[$(Step::$v,)*];

            /// Its name in the journal.
            pub fn name(self) -> Cow<'static, str> {
                match self {
                    $(Step::$v => Cow::Borrowed($name),)*
                    Step::AfterMove(hook) => Cow::Owned(format!("after move: {hook}")),
                }
            }
        }
    };
}

steps! {
    // Before anything stops.
    /// The move's one-time FTP accounts, and their netrc files on both hosts (cold).
    Accounts => "one-time accounts",
    /// What an earlier move left on the target, removed while the VM runs on the source.
    ClearLeftover => "clear leftover on target",
    /// Empty copies of the VM's local disks made on the target (before its hypervisor opens
    /// them), where there is room and nothing to overwrite.
    TargetDisks => "target disks",
    /// The target readied to receive the VM (paused, nothing loaded).
    PrepareTarget => "prepare target",
    /// The VM's port on the target's switch, with the source port's tag and rate limit.
    TargetPort => "target port",
    /// The target serves its disks' copies to the source's mirror.
    ExportDisks => "export disks",
    /// The target listens for the live stream.
    TargetListens => "target listens",
    // The cold path's break.
    PauseSource => "pause source",
    /// The VM's announcement sent into the target switch from its new port, at the pause.
    Repoint => "re-point network",
    SaveToStore => "save to image store",
    LoadOnTarget => "load on target",
    /// The port put before the load has its device (drivers whose load makes the NIC).
    TargetPortUp => "target port up",
    VerifyChecksum => "verify checksum",
    ResumeOnTarget => "resume on target",
    /// The target's files of the transfer (the fifo, the checksum) removed.
    TransferFiles => "remove transfer files",
    // The live path.
    /// The source's local disks mirrored onto the target's copies, until in sync.
    MirrorDisks => "mirror disks",
    LivePreCopy => "live pre-copy",
    /// The mirror ended once the VM's state is across (the target's copies are whole).
    EndMirror => "end mirror",
    /// The target stops serving its disks.
    EndExport => "end disk export",
    TargetRuns => "target runs",
    // Once the VM runs on the target.
    NewMac => "new mac",
    Announce => "announce",
    ApplianceNeighbour => "appliance neighbour",
    StopSource => "stop source",
    SourcePort => "source port",
    /// The source's local disks removed (`source_disks = "remove"`), the VM running on its
    /// target from its copies.
    SourceDisks => "remove source disks",
    /// The one-time accounts and netrc files removed (whatever the outcome).
    DropAccounts => "drop accounts",
    // A rollback.
    UndoSave => "undo save",
    UndoPause => "undo pause source",
    AnnounceOnSource => "announce on source",
    UndoPrepareTarget => "undo prepare target",
    UndoTargetPort => "undo target port",
    UndoMirror => "undo mirror",
    /// The target's partial copies of the disks removed (never the source's).
    UndoTargetDisks => "remove target disks",
    // Recovery after a restart: forward.
    RecoverTargetPort => "recover: target port",
    RecoverResumeTarget => "recover: resume on target",
    RecoverAnnounce => "recover: announce",
    RecoverStopSource => "recover: stop source",
    RecoverSourcePort => "recover: source port",
    RecoverNewMac => "recover: new mac",
    RecoverEndExport => "recover: end disk export",
    // Recovery: back.
    RecoverCancelOutgoing => "recover: cancel outgoing migration",
    RecoverCancelMirror => "recover: cancel disk mirror",
    RecoverRemoveTargetDisks => "recover: remove target disks",
    RecoverClearTarget => "recover: clear target",
    RecoverRemoveTargetPort => "recover: remove target port",
    RecoverResumeSource => "recover: resume source",
    RecoverAnnounceOnSource => "recover: announce on source",
    /// The one-time accounts, netrc and transfer files of a cold move removed.
    RecoverOneTimeFiles => "recover: remove one-time files",
}

/// When a crash is injected at a step (`NETMIGRATE_CRASH_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Journaled as started, its side effect not done.
    Before,
    /// Its side effect done, not yet journaled as done.
    After,
}

impl Step {
    /// The `NETMIGRATE_CRASH_AT` value that kills the daemon at this step.
    pub fn crash_at(self, when: When) -> String {
        let w = match when {
            When::Before => "before",
            When::After => "after",
        };
        format!("{}:{w}", self.name())
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_a_name_of_its_own() {
        let mut seen = std::collections::HashSet::new();
        for s in Step::FIXED {
            assert!(seen.insert(s.name()), "{s:?}: {} twice", s.name());
        }
        assert_eq!(Step::AfterMove("dns").name(), "after move: dns");
        assert_eq!(
            Step::ResumeOnTarget.crash_at(When::After),
            "resume on target:after"
        );
    }
}
