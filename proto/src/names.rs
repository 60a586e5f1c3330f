//! Short names of wire enums, as operators type and read them (`--hypervisor qemu`, the
//! agents table): one spelling for the CLI, the scheduler's reasons and the logs.

use crate::v1::Hypervisor;

impl Hypervisor {
    /// `any`, `qemu`, `kvm`, `xen` or `test`.
    pub fn short_name(self) -> &'static str {
        match self {
            Hypervisor::Unspecified => "any",
            Hypervisor::Qemu => "qemu",
            Hypervisor::Kvm => "kvm",
            Hypervisor::Xen => "xen",
            Hypervisor::Test => "test",
        }
    }
}
