//! Where a slot's work comes from: the seam between the slots and what tells them to
//! start a runner. Today two sources: in slots mode every slot keeps a listener of one
//! repository or organisation registered (no source object: the slot machine's own
//! loop), and in scale-set mode [`scaleset`] holds the host's one session and hands a
//! slot a runner per assigned job. Many targets with one capacity go beside it here.

pub mod scaleset;
