"""The core every part of the appliance shares: errors, CLI ending, atomic writes, safe loading,
the wire codec and mux, the status report, the enrolment contract. Imports nothing of ours."""
