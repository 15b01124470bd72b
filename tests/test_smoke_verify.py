"""The happy path end to end: a list signed by the endorser verifies."""

from cryptography.hazmat.primitives.serialization import Encoding

from vmtrust.verify import Policy, verify_signed_list


def test_signed_list_verifies(sign, trust, pki):
    verified = verify_signed_list(sign(), Policy(trust=trust))
    assert verified.endorser.dn == pki.endorser.dn
    assert verified.imagelist.images[0].size == 20
    assert verified.chain[-1].der == pki.ca.cert.public_bytes(Encoding.DER)


def test_intermediate_chain_verifies(sign, trust, pki):
    data = sign(signer=pki.sub_endorser, extra=[pki.sub_ca.cert])
    verified = verify_signed_list(data, Policy(trust=trust))
    assert [c.subject for c in verified.chain] == [pki.sub_endorser.dn, pki.sub_ca.dn, pki.ca.dn]
