//! An agent's own HTTP: deny by default, and never to the credential's broker
//! or helper under any spelling.
