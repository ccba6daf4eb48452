"""A LiteSVM ``TransactionError`` as a validator's RPC shows it: the ``err`` JSON and the text.

solders' own ``to_json`` of these errors is not the RPC shape (``[0,1]`` instead of
``{"InstructionError":[0,{"Custom":1}]}``), so the mapping is written here.
"""

from __future__ import annotations

import re
from typing import Any

from solders.transaction_status import (
    InstructionErrorBorshIO,
    InstructionErrorCustom,
    InstructionErrorFieldless,
    TransactionErrorDuplicateInstruction,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
    TransactionErrorInsufficientFundsForRent,
    TransactionErrorProgramExecutionTemporarilyRestricted,
)

#: Display texts of the errors a client meets most (``solana-sdk`` ``TransactionError``'s Display).
_TEXTS = {
    "AccountInUse": "Account in use",
    "AccountNotFound": "Attempt to debit an account but found no record of a prior credit.",
    "ProgramAccountNotFound": "Attempt to load a program that does not exist",
    "InsufficientFundsForFee": "Insufficient funds for fee",
    "InvalidAccountForFee": "This account may not be used to pay transaction fees",
    "AlreadyProcessed": "This transaction has already been processed",
    "BlockhashNotFound": "Blockhash not found",
    "SignatureFailure": "Transaction did not pass signature verification",
    "MissingSignatureForFee": "Transaction requires a fee but has no signature present",
    "SanitizeFailure": "Transaction failed to sanitize accounts offsets correctly",
    "InvalidAccountIndex": "Transaction contains an invalid account reference",
    "InvalidProgramForExecution": "This program may not be used for executing instructions",
    "InvalidWritableAccount": "Transaction loads a writable account that cannot be written",
    "InvalidRentPayingAccount": "Transaction leaves an account with a lower balance than rent-exempt minimum",
}
_INSTRUCTION_TEXTS = {
    "GenericError": "generic instruction error",
    "InvalidArgument": "invalid program argument",
    "InvalidInstructionData": "invalid instruction data",
    "InvalidAccountData": "invalid account data for instruction",
    "InsufficientFunds": "insufficient funds for instruction",
    "MissingRequiredSignature": "missing required signature for instruction",
    "AccountAlreadyInitialized": "instruction requires an uninitialized account",
    "UninitializedAccount": "instruction requires an initialized account",
    "IncorrectProgramId": "incorrect program id for instruction",
    "InvalidAccountOwner": "Invalid account owner",
    "PrivilegeEscalation": "Cross-program invocation with unauthorized signer or writable account",
    "ExternalAccountDataModified": "instruction modified data of an account it does not own",
    "ReadonlyLamportChange": "instruction changed the balance of a read-only account",
}


def _name(value: object) -> str:
    """``TransactionErrorFieldless.BlockhashNotFound`` -> ``BlockhashNotFound``."""
    return str(value).rsplit(".", 1)[-1]


def _instruction_err(inner: Any) -> Any:
    if isinstance(inner, InstructionErrorCustom):
        return {"Custom": inner.code}
    if isinstance(inner, InstructionErrorBorshIO):
        return {"BorshIoError": str(inner)}
    if isinstance(inner, InstructionErrorFieldless):
        return _name(inner)
    return _fallback_name(inner)


def _fallback_name(value: object) -> str:
    match = re.match(r"[A-Za-z]+", repr(value))
    return match.group(0) if match else "Unknown"


def err_json(err: Any) -> Any:
    """The RPC ``err`` value: a string for fieldless errors, an object otherwise."""
    if isinstance(err, TransactionErrorFieldless):
        return _name(err)
    if isinstance(err, TransactionErrorInstructionError):
        return {"InstructionError": [err.index, _instruction_err(err.err)]}
    if isinstance(err, TransactionErrorInsufficientFundsForRent):
        return {"InsufficientFundsForRent": {"account_index": err.account_index}}
    if isinstance(err, TransactionErrorDuplicateInstruction):
        return {"DuplicateInstruction": int(err.index)}
    if isinstance(err, TransactionErrorProgramExecutionTemporarilyRestricted):
        return {"ProgramExecutionTemporarilyRestricted": {"account_index": err.account_index}}
    return _fallback_name(err)


def fieldless_text(name: str) -> str:
    """``BlockhashNotFound`` -> ``Blockhash not found``."""
    return _TEXTS.get(name, name)


def err_text(err: Any) -> str:
    """The human text a validator puts after ``Transaction simulation failed: ``."""
    doc = err_json(err)
    if isinstance(doc, str):
        return _TEXTS.get(doc, doc)
    if "InstructionError" in doc:
        index, inner = doc["InstructionError"]
        if isinstance(inner, dict) and "Custom" in inner:
            detail = f"custom program error: {inner['Custom']:#x}"
        elif isinstance(inner, str):
            detail = _INSTRUCTION_TEXTS.get(inner, inner)
        else:
            detail = str(inner)
        return f"Error processing Instruction {index}: {detail}"
    if "InsufficientFundsForRent" in doc:
        index = doc["InsufficientFundsForRent"]["account_index"]
        return f"Transaction results in an account ({index}) with insufficient funds for rent"
    return str(next(iter(doc)))
