"""The constants of the Certificate Services backup and restore API (``certbcli.h``, spec §1.3, §1.4), defined once.

The integer values are the header's; :mod:`pycertsrv.certbcli` re-exports them under the same names.
The ``TAG_*`` strings are the one-character file-type tags that prefix the entries of the file lists
(spec §1.4: ``CSBFT_*`` as a character). Also here: the backup kinds and the wire's read limits, which
the server (:mod:`pycertsrv.backup`) and the client (:mod:`pycertsrv.client`) must agree on.
"""

from __future__ import annotations

# spec §1.3 [HDR]
CSBACKUP_TYPE_FULL = 0x00000001
CSBACKUP_TYPE_LOGS_ONLY = 0x00000002
CSBACKUP_TYPE_MASK = 0x00000003
CSBACKUP_DISABLE_INCREMENTAL = 0xFFFFFFFF
CSRESTORE_TYPE_FULL = 0x00000001
CSRESTORE_TYPE_ONLINE = 0x00000002
CSRESTORE_TYPE_CATCHUP = 0x00000004
CSRESTORE_TYPE_MASK = 0x00000005

CSBFT_DIRECTORY = 0x80
CSBFT_DATABASE_DIRECTORY = 0x40
CSBFT_LOG_DIRECTORY = 0x20
CSBFT_LOG = 0x21  # '!'
CSBFT_LOG_DIR = 0x82
CSBFT_CHECKPOINT_DIR = 0x83
CSBFT_CERTSERVER_DATABASE = 0x44  # 'D'
CSBFT_PATCH_FILE = 0x25  # '%'
CSBFT_UNKNOWN = 0x0F

CSCONTROL_SHUTDOWN = 1
CSCONTROL_SUSPEND = 2
CSCONTROL_RESTART = 3

JET_bitBackupIncremental = 0x1
JET_bitBackupAtomic = 0x4
JET_bitBackupSnapshot = 0x10

wszDBBACKUPSUBDIR = "DataBase"
wszDBBACKUPCERTBACKDAT = "certbkxp.dat"
wszPFXFILENAMEEXT = ".p12"
wszDBFILENAMEEXT = ".edb"
wszLOGFILENAMEEXT = ".log"
wszDATFILENAMEEXT = ".dat"
wszPATFILENAMEEXT = ".pat"
wszLOGPATH = "CertLog"
szDBBASENAMEPARM = "edb"
wszREGDBLASTFULLBACKUP = "DBLastFullBackup"
wszREGDBLASTINCREMENTALBACKUP = "DBLastIncrementalBackup"
wszREGDBLASTRECOVERY = "DBLastRecovery"
wszREGKEYRESTOREINPROGRESS = "RestoreInProgress"
wszREGBACKUPLOGDIRECTORY = "BackupLogDirectory"
wszREGCHECKPOINTFILE = "CheckPointFile"
wszREGLOWLOGNUMBER = "LowLogNumber"
wszREGHIGHLOGNUMBER = "HighLogNumber"
wszREGLOGPATH = "LogPath"
wszREGRESTOREMAPCOUNT = "RestoreMapCount"
wszREGRESTOREMAP = "RestoreMap"
wszREGDATABASERECOVERED = "DatabaseRecovered"
wszREGRESTORESTATUS = "RestoreStatus"
wszREGDBDIRECTORY = "DBDirectory"
wszREGDBLOGDIRECTORY = "DBLogDirectory"
wszREGDBSYSDIRECTORY = "DBSystemDirectory"
wszREGDBTEMPDIRECTORY = "DBTempDirectory"
DBFLAGS_CIRCULARLOGGING = 0x4
IF_NOREMOTEICERTADMIN = 0x10
IF_NOREMOTEICERTADMINBACKUP = 0x40
IF_NOLOCALICERTADMINBACKUP = 0x80
IF_NOSNAPSHOTBACKUP = 0x100
szBACKUPANNOTATION = "Cert Server Backup Interface"
szRESTOREANNOTATION = "Cert Server Restore Interface"

# spec §1.4: the file-type tag that prefixes a file-list entry (the CSBFT_* value as one character).
TAG_LOG = chr(CSBFT_LOG)
TAG_CERTSERVER_DATABASE = chr(CSBFT_CERTSERVER_DATABASE)
TAG_LOG_DIR = chr(CSBFT_LOG_DIR)
TAG_CHECKPOINT_DIR = chr(CSBFT_CHECKPOINT_DIR)

# The two kinds of backup (spec §2.2): a full set, or the log generations since the last backup.
FULL = "full"
INCREMENTAL = "incremental"

# Largest chunk one Read returns as bytes: bounds the service's memory whatever the database size.
MAX_READ = 4 << 20
# Largest chunk one zero-copy Read (read_range: sendfile, no buffer in the service) covers: fewer
# round trips; memory stays bounded because senders without sendfile send it in MAX_READ pieces.
MAX_SEND = 64 << 20
